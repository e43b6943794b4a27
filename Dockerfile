# mixpool in a container. Two targets:
#   docker build -t mixpool .                      CPU image (default)
#   docker build --target cuda -t mixpool:cuda .   adds the CUDA libraries (PyPI's torch 2.11.0)
# The binary is the same in both: it loads libtorch's CUDA backend at start-up where it exists.

FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip \
    && rm -rf /var/lib/apt/lists/*
ENV MIXPOOL_CACHE=/opt/mixpool
WORKDIR /src
COPY scripts/libtorch.sh scripts/libtorch.sh
# libtorch 2.11.0 from the PyPI wheel, at the path the binary's rpath will name.
RUN scripts/libtorch.sh
COPY . .
RUN LIBTORCH=/opt/mixpool/libtorch-2.11.0/torch cargo build --release \
    && cp target/release/mixpool /usr/local/bin/mixpool

FROM debian:bookworm-slim AS cpu
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/mixpool/libtorch-2.11.0 /opt/mixpool/libtorch-2.11.0
COPY --from=build /usr/local/bin/mixpool /usr/local/bin/mixpool
COPY config/default.toml /etc/mixpool/default.toml
ENV MIXPOOL_CONFIG=/etc/mixpool/default.toml
WORKDIR /data
ENTRYPOINT ["mixpool"]
CMD ["--help"]

FROM cpu AS cuda
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/torch && /opt/torch/bin/pip install --no-cache-dir torch==2.11.0
# The full torch wheel brings libtorch_cuda.so and the CUDA libraries it needs.
ENV LD_LIBRARY_PATH=/opt/torch/lib/python3.11/site-packages/torch/lib

FROM cpu
