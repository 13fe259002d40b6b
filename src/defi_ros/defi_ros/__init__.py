"""defi_ros: the ROS 2 layer every DeFI node builds on (perception, policy, sim, the recorder).

    lifecycle     DefiNode, the lifecycle base (configure / activate / cleanup, errors, clock jumps)
    params        dataclass -> declared ROS parameters (description, range), read once; CommonParams
    model         ModelParams, checkpoint loading, one model call at a time (model_call)
    status        PolicyStatus -> /diagnostics and the RViz status marker
    qos           one QoS profile per kind of topic
    conversions   message <-> numpy (images, features, latent actions, chunks, stamps)
    bootstrap     init_ros, run_node, shutdown_nodes: signals, GIL switch interval, executors
"""
