"""Launch the x3kd detector graph: ``ros2 launch x3kd_ros detector.launch.py checkpoint:=<last.pt>``.

Arguments (x3kd_ros.graph.description.LAUNCH_ARGUMENTS): config, checkpoint, device, use_teachers, namespace,
lidar_checkpoint, radar_checkpoint, calibration_file, use_sim_time, fastdds_profile. Example with the
teachers and the online comparison::

    ros2 launch x3kd_ros detector.launch.py checkpoint:=runs/student/last.pt use_teachers:=true \
        lidar_checkpoint:=runs/lidar/last.pt radar_checkpoint:=runs/radar/last.pt

A teacher whose checkpoint argument is empty is not started (nor its comparison node); the launch
log names it. ``use_sim_time:=true`` sets that parameter on every node (bag time from
``python -m x3kd_ros.bag.replay BAG --clock``, or a simulator's ``/clock``).

The nodes get the Fast DDS transport profile for big images (config/dds/fastdds_large_images.xml,
an environment action scoped to them) unless ``FASTDDS_DEFAULT_PROFILES_FILE`` is already set or
another RMW is used; ``fastdds_profile:=off`` or ``:=<file.xml>`` overrides that. The rule lives in
x3kd_ros.graph.transport (x3kd_run_graph uses it too); the launch log says what was applied. Camera
drivers in other processes must load the same file (README, "Big images").

In a venv made by tools/setup.sh, ``source tools/ros_env.sh`` first.

The nodes, their parameters and remappings come from ONE description, config/ros/graph.yaml, read
by x3kd_ros.graph.description; ``x3kd_run_graph`` starts the same graph as plain processes where launch_ros is
not installed (a test checks both give the same command lines). launch / launch_ros are imported
inside generate_launch_description() only, so this file imports anywhere.
"""


def generate_launch_description():
    import os

    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, GroupAction, LogInfo, OpaqueFunction, SetEnvironmentVariable
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node
    from launch_ros.parameter_descriptions import ParameterValue

    from x3kd_ros.graph import description as graph, transport

    def nodes(context, *args, **kwargs):
        values = {a.name: LaunchConfiguration(a.name).perform(context) for a in graph.LAUNCH_ARGUMENTS}
        skipped = []
        specs = graph.load_graph(values, skipped=skipped)
        # The Fast DDS profile for big images, by the rule x3kd_run_graph follows (x3kd_ros.graph.transport):
        # not when the user already set a profile of their own or runs another RMW.
        environment = getattr(context, "environment", os.environ)
        env, note = transport.profile_environment(values["fastdds_profile"], environment)
        # A teacher without its checkpoint is left out (graph.yaml `requires`), and the log says so.
        actions = [LogInfo(msg=reason) for _, reason in skipped]
        actions.append(LogInfo(msg=f"Fast DDS transport profile: {note}"))
        node_actions = []
        for spec in specs:
            kwargs = graph.launch_node_kwargs(spec)
            # Typed values: launch_ros would otherwise re-read strings as YAML ('' -> null).
            kwargs["parameters"] = [
                {k: ParameterValue(v, value_type=type(v)) for k, v in p.items()} if isinstance(p, dict) else p
                for p in kwargs["parameters"]
            ]
            node_actions.append(Node(**kwargs))
        if env:
            # Scoped: the variable reaches these nodes only, not actions of a launch file including this one.
            node_actions = [GroupAction([*(SetEnvironmentVariable(k, v) for k, v in env.items()), *node_actions],
                                        scoped=True)]
        return actions + node_actions

    declared = [DeclareLaunchArgument(a.name, default_value=a.default, description=a.description)
                for a in graph.LAUNCH_ARGUMENTS]
    return LaunchDescription(declared + [OpaqueFunction(function=nodes)])
