from setuptools import find_packages, setup

PACKAGE = 'defi_training'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
    ],
    install_requires=['setuptools'],
    zip_safe=False,
    maintainer='DeFI for ROS 2 developers',
    maintainer_email='defi@example.org',
    description='ROS-free data sources (rosbag2, video, LeRobot v3), episode cache and training stages.',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            'defi-train = defi_training.train_cli:run',
            'defi-data = defi_training.data_cli:main',
        ],
    },
)
