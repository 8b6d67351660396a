from .cli import bench

bench(prog_name="leadpulse bench")
