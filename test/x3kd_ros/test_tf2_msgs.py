"""The vendored tf2_msgs/TFMessage must be upstream's type (same RIHS01 hash), so /tf and
/tf_static from our bags and nodes interoperate with real ROS 2 tools."""

import json
from pathlib import Path

UPSTREAM_TFMESSAGE_HASH = "RIHS01_e369d0f05a23ae52508854b66f6aa0437f3449d652e8cbf22d5abe85d020f087"


def test_tfmessage_type_hash_equals_upstream():
    import tf2_msgs
    from tf2_msgs.msg import TFMessage

    share = Path(tf2_msgs.__file__).resolve()
    # <prefix>/lib/python3.11/site-packages/tf2_msgs/__init__.py -> <prefix>/share/tf2_msgs/...
    prefix = share.parents[4]
    description = json.loads((prefix / "share" / "tf2_msgs" / "msg" / "TFMessage.json").read_text())
    assert description["type_hashes"][0]["hash_string"] == UPSTREAM_TFMESSAGE_HASH
    msg = TFMessage()
    assert list(msg.get_fields_and_field_types().items()) == [("transforms", "sequence<geometry_msgs/TransformStamped>")]
