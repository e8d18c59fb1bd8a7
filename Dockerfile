# One image for all of mushu's services (README, "Docker").
#   docker build -t mushu .
#   docker run --rm -it --network host mushu              # all three under supervisord (mushu up --foreground)
#   docker compose up                                     # one container per service: docker-compose.yml
FROM python:3.11-slim

# libusb for the USB amplifier drivers (g.USBamp, Emotiv EPOC; the 'usb' extra).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libusb-1.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/mushu
COPY pyproject.toml README.md ./
COPY mushu_core ./mushu_core
COPY mushu_client ./mushu_client
COPY mushu_cli ./mushu_cli
COPY services ./services
RUN pip install --no-cache-dir ".[services,usb,lsl,viewer]"

# Inside a container the services listen on every interface (the *_BIND
# variables) so that other containers and hosts reach them; the connect
# endpoints stay on localhost for what runs in this container.
# Recordings go to /data: mount a volume there.
ENV MUSHU_AMP_DATA_BIND=tcp://0.0.0.0:12345 \
    MUSHU_AMP_CONTROL_BIND=tcp://0.0.0.0:12346 \
    MUSHU_MARKERS_DATA_BIND=tcp://0.0.0.0:12347 \
    MUSHU_MARKERS_CONTROL_BIND=tcp://0.0.0.0:12348 \
    MUSHU_MARKERS_INGRESS_BIND=tcp://0.0.0.0:12349 \
    MUSHU_MARKERS_HOST_BIND=0.0.0.0 \
    MUSHU_RECORDER_CONTROL_BIND=tcp://0.0.0.0:12350 \
    MUSHU_DATA_DIR=/data \
    MUSHU_RUN_DIR=/run/mushu
VOLUME ["/data"]
WORKDIR /data
# markers TCP+UDP, amp data/control, markers data/control/ingress, recorder control, the viewer's page
EXPOSE 12344/tcp 12344/udp 12345 12346 12347 12348 12349 12350 12360

# All three services under supervisord in the foreground; docker-compose.yml
# runs one service per container instead (mushu-amp, mushu-markers, mushu-recorder).
CMD ["mushu", "up", "--foreground"]
