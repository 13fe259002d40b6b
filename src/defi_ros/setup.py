from setuptools import find_packages, setup

PACKAGE = 'defi_ros'

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
    description='The ROS 2 layer of the DeFI nodes: lifecycle base, parameters, model loading, status, QoS, '
                'conversions, process bootstrap.',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
)
