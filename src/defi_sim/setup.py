from setuptools import find_packages, setup

PACKAGE = 'defi_sim'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        # the sim node's and the DeFI nodes' parameters against the sim (defi_sim.stack)
        ('share/' + PACKAGE + '/config', ['config/sim.yaml', 'config/defi_sim.yaml']),
    ],
    install_requires=['setuptools'],
    zip_safe=False,
    maintainer='DeFI for ROS 2 developers',
    maintainer_email='defi@example.org',
    description='ROS 2 + MuJoCo (Meta-World) simulation node, scripted-expert recording and closed-loop evaluation.',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            'defi_sim_node = defi_sim.sim_node:main',
            'defi_expert_node = defi_sim.expert_node:main',
            'defi-sim = defi_sim.record:main',
            'defi-eval = defi_sim.eval_cli:main',
        ],
    },
)
