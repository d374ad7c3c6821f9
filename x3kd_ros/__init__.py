"""x3kd ROS 2 layer: thin rclpy nodes that convert messages, call x3kd_core and publish.

Importing this package does not import rclpy, so pure helpers (conversions, sync logic,
:mod:`x3kd_ros.ros_env`) stay usable and testable without a ROS graph.
"""
