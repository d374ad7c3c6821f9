"""rosbag2 files: writing a nuScenes-format split as a bag and reading it back (``io``), replaying
it into a live graph with flow control (``replay``), and evaluating the graph on it
(``evaluate``; the scoring itself is :mod:`x3kd_core.eval`)."""
