"""x3kd ROS 2 layer: thin rclpy nodes that convert messages, call x3kd_core and publish.

What lives where (one job per module):

=====================  ==========================================================================
``topics``             topic and frame names the whole package agrees on
``sync``               approximate time synchronizer of several streams (pure logic)
``conversions``        ROS messages <-> numpy / Boxes3D (pure logic)
``message_bytes``      Detection3DArray / MarkerArray written as CDR bytes with numpy
``extrinsics``         calibration YAML and ``/tf_static`` tree -> sensor-to-ego matrices
``comparison``         student-vs-teacher matching and agreement figures (pure logic)
``share``              where the package's shipped files are (installed share/ or the checkout)
``commands``           the ``x3kd bag`` sub-commands (found by x3kd_core's CLI via an entry point)
``nodes/``             the rclpy nodes (detector, LiDAR / radar teachers, comparison) and what
                       they share: parameters, QoS, meters, worker thread, extrinsics, spinning
``bag/``               rosbag2 writing / reading (``io``), replay with flow control (``replay``)
                       and the live replay evaluation (``evaluate``)
``graph/``             the graph description (``description``: config/ros/graph.yaml), the
                       process runner (``runner``), the ROS network rule (``environment``) and
                       the Fast DDS transport profile (``transport``)
=====================  ==========================================================================

Importing this package does not import rclpy, so pure helpers (conversions, sync logic,
:mod:`x3kd_ros.graph.environment`) stay usable and testable without a ROS graph.
"""
