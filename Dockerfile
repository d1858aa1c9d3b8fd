# frappe-cdc: multi-stage build. librdkafka is vendored by the rdkafka crate (needs a C
# toolchain, make, perl and zlib headers at build time only).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked && strip target/release/frappe-cdc

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/frappe-cdc frappe-cdc && mkdir -p /var/lib/frappe-cdc && chown frappe-cdc /var/lib/frappe-cdc
COPY --from=build /src/target/release/frappe-cdc /usr/local/bin/frappe-cdc
USER frappe-cdc
ENV FRAPPE_CDC_STATE_DIR=/var/lib/frappe-cdc
ENTRYPOINT ["frappe-cdc"]
