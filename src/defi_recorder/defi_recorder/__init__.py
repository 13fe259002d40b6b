"""defi_recorder: robot topics as rosbag2 episodes."""
