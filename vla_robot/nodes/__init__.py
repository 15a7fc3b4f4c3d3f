"""rclpy nodes: thin shells that turn messages into core calls and back."""
