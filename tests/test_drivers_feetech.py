"""The SO-101 follower and leader through lerobot's real Feetech code, down to the bytes on the wire.

Everything above the serial port is real: our ``LeRobotArm``, lerobot's ``SO101Follower`` /
``SO101Leader`` and ``FeetechMotorsBus``, the Feetech SDK (``scservo_sdk``: PortHandler opens the port
with pyserial, protocol_packet_handler frames the packets). The port is a pty (``os.openpty()``); on
its other end :class:`FakeServoBus` plays six STS3215 servos speaking the Feetech protocol (protocol
0, as lerobot uses for the STS series). What it implements, as read from feetech-servo-sdk 1.0.0's
``scservo_sdk/protocol_packet_handler.py`` and ``scservo_def.py``:

- Instruction packet: ``FF FF id len instr params… checksum``, ``len = len(params) + 2``,
  ``checksum = ~(id + len + instr + sum(params)) & 0xFF`` (``txPacket``).
- Status packet: ``FF FF id len error params… checksum``, same length and checksum rule (``rxPacket``
  checks it and reports COMM_RX_CORRUPT otherwise).
- PING (1): a status with no parameters; the SDK then READs the model number at address 3 (``ping``).
- READ (2), params ``addr, n``: a status with the ``n`` bytes (``readTxRx``).
- WRITE (3), params ``addr, data…``: stores, answers an empty status (``writeTxRx``).
- SYNC_READ (0x82) to the broadcast id 0xFE, params ``addr, n, id…``: one status per id, in order
  (``syncReadTx``; ``GroupSyncRead.rxPacket`` reads them with ``readRx``).
- SYNC_WRITE (0x83) to 0xFE, params ``addr, n, (id, n bytes)…``: stores, no answer (``syncWriteTxOnly``).
- Multi-byte values are little-endian (``SCS_MAKEWORD`` with ``SCS_END = 0``).

The register addresses are lerobot's STS/SMS table (``lerobot/motors/feetech/tables.py``): model
number 3 (777 = STS3215), firmware 0/1, limits 9/11, homing offset 31 (sign-magnitude, bit 11),
goal 42 and present position 56 (sign-magnitude, bit 15). The servos do not move by themselves: a
test sets what they report and reads what they were sent.

lerobot's connect sequence runs in full: ping + model number of each id, firmware versions, the
calibration read-back (limits and homing offset), the configure writes (torque, lock, acceleration,
PID, operating mode, the gripper's current limits), then SYNC_READ of Present_Position and SYNC_WRITE
of Goal_Position; on close, torque off.
"""
from __future__ import annotations

import json
import math
import os
import select
import sys
import threading
import tty

import numpy as np
import pytest

from vla_robot.drivers.base import DriverError, make_arm
from vla_robot.twin.robots import robot_spec

pytest.importorskip("lerobot")
pytest.importorskip("scservo_sdk")

PING, READ, WRITE, SYNC_READ, SYNC_WRITE = 0x01, 0x02, 0x03, 0x82, 0x83
BROADCAST = 0xFE
MODEL_STS3215 = 777
# name: (address, bytes), as in lerobot's STS_SMS_SERIES_CONTROL_TABLE
REG = {"Firmware_Major_Version": (0, 1), "Firmware_Minor_Version": (1, 1), "Model_Number": (3, 2),
       "Min_Position_Limit": (9, 2), "Max_Position_Limit": (11, 2), "Homing_Offset": (31, 2), "Torque_Enable": (40, 1),
       "Goal_Position": (42, 2), "Present_Position": (56, 2)}
MOTORS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]  # ids 1..6
RESOLUTION = 4096  # STS3215 steps per turn (lerobot's MODEL_RESOLUTION)


def checksum(body) -> int:
    return ~sum(body) & 0xFF


def sign_magnitude(value: int, sign_bit: int) -> int:
    return (1 << sign_bit) | -value if value < 0 else value


class FakeServoBus:
    """STS3215 servos on the far end of a pty; ``port`` is the name to open (the pty's slave)."""

    def __init__(self, ids=range(1, 7)):
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # pyserial sets raw mode too; no echo before it does either
        self.port = os.ttyname(self._slave)
        self.memory = {i: bytearray(256) for i in ids}
        for mem in self.memory.values():
            mem[3:5] = MODEL_STS3215.to_bytes(2, "little")
            mem[0], mem[1] = 3, 10  # firmware 3.10 on all: lerobot refuses mixed firmware
        self.instructions: list[tuple[int, int]] = []  # (instruction, id) in arrival order
        self.bad_checksums = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    # --- the registers, as a test sets and reads them ------------------------------------------------
    def set(self, servo_id: int, name: str, value: int, sign_bit: int | None = None) -> None:
        raw = sign_magnitude(value, sign_bit) if sign_bit is not None else value
        a, n = REG[name]
        self.memory[servo_id][a:a + n] = raw.to_bytes(n, "little")

    def get(self, servo_id: int, name: str) -> int:
        a, n = REG[name]
        return int.from_bytes(self.memory[servo_id][a:a + n], "little")

    def flash_calibration(self, calibration: dict) -> None:
        """What `lerobot-calibrate` leaves in each servo's EEPROM."""
        for cal in calibration.values():
            self.set(cal["id"], "Homing_Offset", cal["homing_offset"], sign_bit=11)
            self.set(cal["id"], "Min_Position_Limit", cal["range_min"])
            self.set(cal["id"], "Max_Position_Limit", cal["range_max"])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        os.close(self._master)
        os.close(self._slave)

    # --- the wire ----------------------------------------------------------------------------------
    def _serve(self) -> None:
        buf = bytearray()
        while not self._stop.is_set():
            if not select.select([self._master], [], [], 0.05)[0]:
                continue
            try:
                buf += os.read(self._master, 1024)
            except OSError:
                return
            while (packet := self._take_packet(buf)) is not None:
                self._handle(*packet)

    def _take_packet(self, buf: bytearray):
        """One checked instruction packet off the front of ``buf``: (id, instruction, params), or None."""
        while True:
            start = buf.find(b"\xff\xff")
            if start < 0:
                del buf[:-1]
                return None
            del buf[:start]
            if len(buf) < 4 or len(buf) < 4 + buf[3]:
                return None
            n = 4 + buf[3]
            packet = bytes(buf[:n])
            del buf[:n]
            if packet[-1] != checksum(packet[2:-1]):
                self.bad_checksums += 1
                continue
            return packet[2], packet[4], packet[5:-1]

    def _status(self, servo_id: int, params: bytes = b"") -> None:
        body = bytes([servo_id, len(params) + 2, 0]) + params  # error byte 0: no fault
        os.write(self._master, b"\xff\xff" + body + bytes([checksum(body)]))

    def _handle(self, servo_id: int, instr: int, params: bytes) -> None:
        self.instructions.append((instr, servo_id))
        if instr in (SYNC_READ, SYNC_WRITE):
            addr, n, rest = params[0], params[1], params[2:]
            if instr == SYNC_READ:
                for i in rest:
                    if i in self.memory:
                        self._status(i, bytes(self.memory[i][addr:addr + n]))
            else:
                for k in range(0, len(rest), n + 1):
                    if rest[k] in self.memory:
                        self.memory[rest[k]][addr:addr + n] = rest[k + 1:k + 1 + n]
            return
        if servo_id not in self.memory:
            return  # no such servo: silence, as on a real bus
        if instr == PING:
            self._status(servo_id)
        elif instr == READ:
            addr, n = params[0], params[1]
            self._status(servo_id, bytes(self.memory[servo_id][addr:addr + n]))
        elif instr == WRITE:
            self.memory[servo_id][params[0]:params[0] + len(params) - 1] = params[1:]
            self._status(servo_id)


# A calibration as lerobot writes it (draccus JSON of {motor: MotorCalibration}), one negative homing
# offset to exercise the sign bit. Body joints: limits 1000..3000, so lerobot's 0 degrees is step 2000.
CALIBRATION = {m: {"id": i + 1, "drive_mode": 0, "homing_offset": -150 + 60 * i, "range_min": 1000, "range_max": 3000}
               for i, m in enumerate(MOTORS)}
CALIBRATION["gripper"].update(range_min=2000, range_max=2600)


def steps_at(deg: float, cal: dict) -> int:
    """The Present_Position step at which lerobot reports ``deg`` (its DEGREES normalisation)."""
    return round((cal["range_min"] + cal["range_max"]) / 2 + deg * (RESOLUTION - 1) / 360)


@pytest.fixture
def servos():
    bus = FakeServoBus()
    bus.flash_calibration(CALIBRATION)
    for cal in CALIBRATION.values():
        bus.set(cal["id"], "Present_Position", steps_at(0.0, cal), sign_bit=15)
    yield bus
    bus.close()


def write_calibration(folder, arm_id: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{arm_id}.json").write_text(json.dumps(CALIBRATION, indent=4))


def test_follower_reads_and_writes_joint_positions_over_the_wire(servos, tmp_path):
    spec = robot_spec("so101")
    write_calibration(tmp_path, "follower")
    arm = make_arm("lerobot", robot_type="so101_follower", port=servos.port, id="follower",
                   calibration_dir=str(tmp_path), offsets_deg=[0.0, 10.0, 0.0, 0.0, 0.0], gripper_range=[0.0, 100.0])
    with arm:
        # lerobot's connect sequence reached the servos: pings, and torque back on after configuring
        assert (PING, 6) in servos.instructions and all(servos.get(i, "Torque_Enable") == 1 for i in range(1, 7))
        pan, lift, grip = CALIBRATION["shoulder_pan"], CALIBRATION["shoulder_lift"], CALIBRATION["gripper"]
        servos.set(1, "Present_Position", steps_at(30.0, pan), sign_bit=15)
        servos.set(2, "Present_Position", steps_at(-20.0, lift), sign_bit=15)
        servos.set(6, "Present_Position", 2450)  # 75 % of the gripper's 2000..2600
        q, _, _ = arm.read()
        step = math.radians(360 / (RESOLUTION - 1))  # one servo step, in radians
        assert q[0] == pytest.approx(math.radians(30.0), abs=step)
        assert q[1] == pytest.approx(math.radians(-20.0 - 10.0), abs=step)  # less the 10 degree offset
        g = spec.gripper_index
        assert q[g] == pytest.approx(spec.gripper_closed + 0.75 * (spec.gripper_open - spec.gripper_closed))
        assert (SYNC_READ, BROADCAST) in servos.instructions

        target = np.array([0.4, -0.3, 0.2, 0.1, -0.5, spec.gripper_open])
        arm.command(target)
        deadline = 50
        while servos.get(5, "Goal_Position") == 0 and deadline:  # the sync write has no answer to wait for
            deadline -= 1
            threading.Event().wait(0.02)
        for i, (m, deg) in enumerate(zip(MOTORS[:5], np.degrees(target[:5]) + [0.0, 10.0, 0.0, 0.0, 0.0])):
            raw = servos.get(i + 1, "Goal_Position")
            value = -(raw & 0x7FFF) if raw & 0x8000 else raw  # sign-magnitude, bit 15
            assert abs(value - steps_at(deg, CALIBRATION[m])) <= 1, m
        assert servos.get(6, "Goal_Position") == 2600  # fully open: the top of the gripper's range
    assert all(servos.get(i, "Torque_Enable") == 0 for i in range(1, 7))  # close leaves the arm limp
    assert servos.bad_checksums == 0


def test_leader_reads_over_the_wire_and_cannot_be_commanded(servos, tmp_path):
    write_calibration(tmp_path, "leader")
    leader = make_arm("lerobot", robot_type="so101_leader", port=servos.port, id="leader",
                      calibration_dir=str(tmp_path))
    with leader:
        assert all(servos.get(i, "Torque_Enable") == 0 for i in range(1, 7))  # a leader is moved by hand
        servos.set(3, "Present_Position", steps_at(-45.0, CALIBRATION["elbow_flex"]), sign_bit=15)
        q, _, _ = leader.read()
        assert q[2] == pytest.approx(math.radians(-45.0), abs=math.radians(360 / (RESOLUTION - 1)))
        with pytest.raises(DriverError, match="leader arm: it can be read, not commanded"):
            leader.command(q)
    assert servos.bad_checksums == 0


def test_missing_port_says_plug_in_or_set_the_port(tmp_path):
    write_calibration(tmp_path, "follower")
    with pytest.raises(DriverError, match=r"no serial port /dev/ttyVLA404: plug the arm's USB cable in .*"
                                          r"set arm_node\.options\.port"):
        make_arm("lerobot", port="/dev/ttyVLA404", calibration_dir=str(tmp_path)).connect()
    with pytest.raises(DriverError, match=r"no serial port /dev/ttyVLA404: .*set teleop_node\.leader\.port"):
        make_arm("lerobot", robot_type="so101_leader", port="/dev/ttyVLA404", calibration_dir=str(tmp_path)).connect()


def test_a_silent_bus_names_the_missing_motors():
    unpowered = FakeServoBus(ids=[1, 2, 3])  # the port opens, but servos 4..6 do not answer
    try:
        with pytest.raises(DriverError, match=r"(?s)cannot connect .*Missing motor IDs.*- 4.*check that the arm is powered"):
            make_arm("lerobot", port=unpowered.port).connect()
    finally:
        unpowered.close()


def test_missing_or_different_calibration_says_run_lerobot_calibrate(servos, tmp_path):
    with pytest.raises(DriverError) as e:
        make_arm("lerobot", port=servos.port, id="follower", calibration_dir=str(tmp_path)).connect()
    assert f"no calibration for id 'follower' at {tmp_path / 'follower.json'}" in str(e.value)
    assert f"lerobot-calibrate --robot.type=so101_follower --robot.port={servos.port} --robot.id=follower" in str(e.value)
    assert all(servos.get(i, "Torque_Enable") == 0 for i in range(1, 7))  # left limp, not holding

    servos.set(4, "Max_Position_Limit", 2900)  # the EEPROM no longer matches the file
    write_calibration(tmp_path, "leader")
    with pytest.raises(DriverError, match=r"the motors of 'leader' on .* hold another calibration than .*leader\.json: "
                                          r"run `lerobot-calibrate --teleop\.type=so101_leader"):
        make_arm("lerobot", robot_type="so101_leader", port=servos.port, id="leader",
                 calibration_dir=str(tmp_path)).connect()


def test_missing_motor_sdk_says_install_the_feetech_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "scservo_sdk", None)  # as on a machine without feetech-servo-sdk
    with pytest.raises(DriverError, match=r"needs its motor bus SDK, the Python module 'scservo_sdk'.*"
                                          r"pip install 'lerobot\[feetech\]==0\.4\.4'"):
        make_arm("lerobot", port="/dev/ttyVLA404", calibration_dir=str(tmp_path)).connect()
