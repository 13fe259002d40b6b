"""defi_sim: Meta-World (MuJoCo) simulation that speaks the robot's ROS 2 topics."""
import os

# MuJoCo picks its OpenGL backend at import time; offscreen rendering without a display needs EGL
# (or OSMesa). Set it before anything imports mujoco, unless the user chose one.
os.environ.setdefault('MUJOCO_GL', 'egl')
