"""Launch the x3kd detector graph: ``ros2 launch x3kd_ros detector.launch.py checkpoint:=<last.pt>``.

Arguments (x3kd_ros.graph.LAUNCH_ARGUMENTS): config, checkpoint, device, use_teachers, namespace,
lidar_checkpoint, radar_checkpoint, calibration_file. Example with the teachers and the online
comparison::

    ros2 launch x3kd_ros detector.launch.py checkpoint:=runs/student/last.pt use_teachers:=true \
        lidar_checkpoint:=runs/lidar/last.pt radar_checkpoint:=runs/radar/last.pt

A teacher whose checkpoint argument is empty is not started (nor its comparison node); the launch
log names it. In a venv made by tools/setup.sh, ``source tools/ros_env.sh`` first.

The nodes, their parameters and remappings come from ONE description, config/ros/graph.yaml, read
by x3kd_ros.graph; ``x3kd_run_graph`` starts the same graph as plain processes where launch_ros is
not installed (a test checks both give the same command lines). launch / launch_ros are imported
inside generate_launch_description() only, so this file imports anywhere.
"""


def generate_launch_description():
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node
    from launch_ros.parameter_descriptions import ParameterValue

    from x3kd_ros import graph

    def nodes(context, *args, **kwargs):
        values = {a.name: LaunchConfiguration(a.name).perform(context) for a in graph.LAUNCH_ARGUMENTS}
        skipped = []
        specs = graph.load_graph(values, skipped=skipped)
        # A teacher without its checkpoint is left out (graph.yaml `requires`), and the log says so.
        actions = [LogInfo(msg=reason) for _, reason in skipped]
        for spec in specs:
            kwargs = graph.launch_node_kwargs(spec)
            # Typed values: launch_ros would otherwise re-read strings as YAML ('' -> null).
            kwargs["parameters"] = [
                {k: ParameterValue(v, value_type=type(v)) for k, v in p.items()} if isinstance(p, dict) else p
                for p in kwargs["parameters"]
            ]
            actions.append(Node(**kwargs))
        return actions

    declared = [DeclareLaunchArgument(a.name, default_value=a.default, description=a.description)
                for a in graph.LAUNCH_ARGUMENTS]
    return LaunchDescription(declared + [OpaqueFunction(function=nodes)])
