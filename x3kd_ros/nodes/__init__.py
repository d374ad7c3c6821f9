"""The x3kd ROS 2 nodes and the rclpy glue they share. Importing a module here imports rclpy.

=======================  ========================================================================
``detector_node``        ``x3kd_detector``: cameras -> synchronizer -> Predictor -> detections
``teacher_nodes``        ``x3kd_lidar_teacher`` / ``x3kd_radar_teacher``: point clouds -> teacher
``comparison_node``      ``x3kd_comparison``: student vs teacher agreement
``model_node``           what the detector and teacher nodes share: parameters, build / destroy,
                         publishing a frame's boxes, the ``/diagnostics`` report
``params``               declared, validated, read-only parameters; devices; config file lookup
``qos``                  QoS profiles and their log text
``meters``               rates, latencies, silent streams, transport loss, throttled logs, statuses
``worker``               the model's bounded worker thread
``extrinsics_source``    ``/tf_static`` and / or calibration YAML -> sensor-to-ego matrices
``spin``                 steady timers, ``main()`` with clean shutdown, ``spin_until``
=======================  ========================================================================
"""
