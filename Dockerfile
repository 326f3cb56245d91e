# The platform and the example apps in one image, for hosts with a Docker engine (docker-compose.yml).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --workspace --bins \
 && mkdir /out && cp target/release/mysimbdp target/release/mysimbdp-sandbox target/release/tortoise-csv \
    target/release/orders-jsonl target/release/gen-data /out/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates procps && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
COPY tenants /srv/mysimbdp/tenants
RUN mkdir -p /srv/mysimbdp/staging /srv/mysimbdp/data && chmod 0700 /srv/mysimbdp/data
# Root inside its own container: the platform gives each tenant's program its own uid, namespaces and
# cgroup (docker-compose.yml runs it privileged for that); the programs themselves never run as root.
WORKDIR /srv/mysimbdp
ENV MYSIMBDP_TENANTS_DIR=/srv/mysimbdp/tenants MYSIMBDP_STAGING_DIR=/srv/mysimbdp/staging MYSIMBDP_DATA_DIR=/srv/mysimbdp/data
ENTRYPOINT ["mysimbdp"]
CMD ["serve"]
