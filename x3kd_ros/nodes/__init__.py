"""The x3kd ROS 2 nodes (``detector_node``, ``teacher_nodes``, ``comparison_node``) and the rclpy
glue they share (parameters, QoS, diagnostics meters, the model's worker thread, extrinsics,
spinning). Importing a module here imports rclpy."""
