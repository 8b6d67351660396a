"""`leadpulse bench` (runner.py, rss.py): a tool beside the product, outside its import graph."""
