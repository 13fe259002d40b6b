from setuptools import find_packages, setup

PACKAGE = 'defi_policy'

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
    description='ROS 2 latent-action encoder, action decoder, chunk executor, ExecuteInstruction server and bringup.',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            'defi_bringup = defi_policy.bringup:main',
            'latent_action_encoder_node = defi_policy.latent_action_encoder_node:main',
            'action_decoder_node = defi_policy.action_decoder_node:main',
            'chunk_executor_node = defi_policy.chunk_executor_node:main',
            'execute_instruction_server = defi_policy.execute_instruction_server:main',
        ],
    },
)
