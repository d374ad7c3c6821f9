"""The x3kd graph as a whole: its description (``description``: which nodes with which
parameters, from config/ros/graph.yaml), the process runner without ros2 launch (``runner``), the
ROS network rule every process follows (``environment``) and the Fast DDS profile for big
messages (``transport``). Nothing here imports rclpy at module level."""
