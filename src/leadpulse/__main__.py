from leadpulse.cli import main

main()
