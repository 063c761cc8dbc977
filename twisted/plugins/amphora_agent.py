# A twistd plugin drop-in: no logic here (see amphora.tap).
from twisted.application.service import ServiceMaker

amphora_agent = ServiceMaker(
    "amphora-agent",
    "amphora.tap",
    "Octavia Reference HAProxy Amphora API v0.1 agent",
    "amphora-agent",
)
