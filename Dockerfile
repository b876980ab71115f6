# waly's container image, used by docker-compose.yml.
#
#   docker build -t waly .
#   docker run -v $PWD/config/waly.kafka.yaml:/etc/waly/waly.yaml:ro \
#     -e WALY_PASSWORD_POSTGRES=... -p 6432:6432 waly
#
# Stage 1 builds the release binary with the Rust toolchain image (bookworm:
# gcc, make, perl and zlib for rdkafka's bundled librdkafka are already there;
# pg_query's bindgen needs libclang). Stage 2 is a slim Debian with the binary.

FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin waly \
 && cp target/release/waly /usr/local/bin/waly

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/waly /usr/local/bin/waly
# waly's data directory (config/waly.kafka.yaml: data_dir).
RUN mkdir -p /var/lib/waly /etc/waly
VOLUME /var/lib/waly
EXPOSE 6432
ENTRYPOINT ["waly"]
CMD ["serve", "--config", "/etc/waly/waly.yaml"]
