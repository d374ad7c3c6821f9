"""rosbag2 files: writing a nuScenes-format split as a bag and reading it back (``io``), replaying
it into a live graph with flow control (``replay``, with ``replay_frames``, ``playback_clock``,
``replay_transport`` and ``replay_cli``), and evaluating the graph on it
(``evaluate``, run in parts by ``eval_config``, ``ground_truth``, ``topic_map``, ``eval_graph``,
``eval_live``, ``matching`` and ``accounting``; the scoring itself is :mod:`x3kd_core.eval`)."""
