"""QoS profiles of the DeFI topics: one per kind of topic (sensor data, commands, latched state)."""
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

# camera/image_raw, joint_states: whatever the driver does, best effort keeps us compatible
SENSOR = qos_profile_sensor_data
# instruction: late joiners still get the current task
INSTRUCTION = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                         reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
# defi/forward_features: only the newest matters
FEATURES = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                      reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
# defi/latent_actions, defi/action_chunk, robot commands
RELIABLE = QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST,
                      reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
# defi/predicted_frames, defi/status
BEST_EFFORT = QoSProfile(depth=5, history=HistoryPolicy.KEEP_LAST,
                         reliability=ReliabilityPolicy.BEST_EFFORT,
                         durability=DurabilityPolicy.VOLATILE)
# enable gate between the action server and the executor: latched, like the instruction
ENABLE = INSTRUCTION
