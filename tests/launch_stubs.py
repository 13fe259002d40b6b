"""Minimal stand-ins of the launch/launch_ros classes defi_bringup's launch files use, so that
their Python logic (which arguments become which node parameters) runs where launch_ros is not
installed. Only what those files use; semantics as in launch: a declared argument's default
applies unless it is given, an argument without a default must be given."""
import importlib.util
import os
import sys
import types


class Context:
    def __init__(self, launch_configurations):
        self.launch_configurations = dict(launch_configurations)


def _perform(value, context):
    return value.perform(context) if hasattr(value, 'perform') else str(value)


class LaunchConfiguration:
    def __init__(self, name):
        self.name = name

    def perform(self, context):
        if self.name not in context.launch_configurations:
            raise KeyError(f'launch configuration {self.name!r} is not set')
        return context.launch_configurations[self.name]


class PathJoinSubstitution:
    def __init__(self, parts):
        self.parts = list(parts)

    def perform(self, context):
        return os.path.join(*[_perform(p, context) for p in self.parts])


class FindPackageShare:
    def __init__(self, package):
        self.package = package

    def perform(self, context):
        from ament_index_python.packages import get_package_share_directory
        return get_package_share_directory(self.package)


class _Condition:
    def __init__(self, predicate):
        self.predicate = predicate

    def value(self, context):
        return _perform(self.predicate, context).strip().lower() in ('true', '1')


class IfCondition(_Condition):
    def evaluate(self, context):
        return self.value(context)


class UnlessCondition(_Condition):
    def evaluate(self, context):
        return not self.value(context)


class LaunchDescription:
    def __init__(self, entities=()):
        self.entities = list(entities)


class DeclareLaunchArgument:
    def __init__(self, name, default_value=None, description=''):
        self.name, self.default_value, self.description = name, default_value, description


class OpaqueFunction:
    def __init__(self, function):
        self.function = function


class Node:
    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.enabled = True


def _modules():
    mods = {}
    for name in ('launch', 'launch.actions', 'launch.conditions', 'launch.substitutions',
                 'launch_ros', 'launch_ros.actions', 'launch_ros.substitutions'):
        mods[name] = types.ModuleType(name)
    mods['launch'].LaunchDescription = LaunchDescription
    mods['launch.actions'].DeclareLaunchArgument = DeclareLaunchArgument
    mods['launch.actions'].OpaqueFunction = OpaqueFunction
    mods['launch.conditions'].IfCondition = IfCondition
    mods['launch.conditions'].UnlessCondition = UnlessCondition
    mods['launch.substitutions'].LaunchConfiguration = LaunchConfiguration
    mods['launch.substitutions'].PathJoinSubstitution = PathJoinSubstitution
    mods['launch_ros.actions'].Node = Node
    mods['launch_ros.substitutions'].FindPackageShare = FindPackageShare
    return mods


def load(path):
    """Import a launch file against the stand-ins (sys.modules is restored afterwards)."""
    mods = _modules()
    saved = {name: sys.modules.get(name) for name in mods}
    sys.modules.update(mods)
    try:
        spec = importlib.util.spec_from_file_location(f'launch_file_{abs(hash(str(path)))}', path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


def run(module, given: dict) -> list:
    """The Node actions `module`'s launch description yields with these launch arguments given;
    each with `enabled` from its condition."""
    ld = module.generate_launch_description()
    context = Context({})
    for entity in ld.entities:
        if isinstance(entity, DeclareLaunchArgument):
            if entity.name in given:
                context.launch_configurations[entity.name] = str(given[entity.name])
            elif entity.default_value is not None:
                context.launch_configurations[entity.name] = _perform(entity.default_value, context)
            else:
                raise ValueError(f'launch argument {entity.name!r} has no default and was not given')
    unknown = set(given) - set(context.launch_configurations)
    if unknown:
        raise ValueError(f'not launch arguments: {sorted(unknown)}')
    nodes = []
    for entity in ld.entities:
        if isinstance(entity, OpaqueFunction):
            nodes.extend(entity.function(context))
        elif isinstance(entity, Node):
            nodes.append(entity)
    for node in nodes:
        condition = node.kwargs.get('condition')
        node.enabled = condition is None or condition.evaluate(context)
    return nodes
