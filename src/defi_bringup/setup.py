from glob import glob

from setuptools import setup

PACKAGE = 'defi_bringup'

# No Python package of its own: the one-process executable `defi_bringup` is defi_policy's.
setup(
    name=PACKAGE,
    version='0.1.0',
    packages=[],
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        ('share/' + PACKAGE + '/launch', sorted(glob('launch/*.launch.py'))),
        ('share/' + PACKAGE + '/config', sorted(glob('config/*.yaml'))),
        ('share/' + PACKAGE + '/rviz', sorted(glob('rviz/*.rviz'))),
    ],
    install_requires=['setuptools'],
    zip_safe=False,
    maintainer='DeFI for ROS 2 developers',
    maintainer_email='defi@example.org',
    description='Launch files, ROS parameter files and the RViz config of DeFI for ROS 2.',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
)
