from .runner import bench

bench(prog_name="leadpulse bench")
