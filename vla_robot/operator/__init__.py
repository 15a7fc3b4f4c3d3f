"""The person at the robot: ``vla-robot operator``, a console beside ``ros2 launch``.

It talks to the graph only through its topics and services, as a person does: the episode manager's
``~/start``, ``~/stop`` and ``~/discard``, labels on ``episode/label`` that name their episode, the
e-stop on ``estop``. ``console`` is the logic (no ROS), ``ros`` the thin ROS side, ``cli`` the terminal
screen, ``web`` the same console as a web page (``vla-robot operator --web PORT``).
"""
