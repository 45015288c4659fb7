# lockd container image.
#
#   docker build -t lockd .
#   docker run --rm -p 8080:8080 -e LOCKD_REDIS__URL=redis://redis:6379 lockd
#
# Configure with LOCKD_<SECTION>__<KEY> environment variables (LOCKD_REDIS__URL is the one
# you almost always need: the default, redis://127.0.0.1:6379, is the container itself) or
# with flags after the image name, e.g. `lockd --log-format json`.

# --- build -------------------------------------------------------------------------------
FROM rust:1-slim-bookworm AS build
WORKDIR /src

# Build the dependencies alone first, so that a change to lockd's own code reuses this layer.
# The workspace also holds the load tool (bench/): its manifest must be there for cargo to
# read the workspace, but only lockd is built.
COPY Cargo.toml Cargo.lock ./
COPY bench/Cargo.toml bench/Cargo.toml
RUN mkdir -p src bench/src \
    && echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > bench/src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked -p lockd \
    && rm -rf src

# The real sources. The Lua scripts (src/store/scripts/*.lua) and config/default.toml are
# compiled in with include_str!, so both directories are needed.
COPY src ./src
COPY config ./config
# COPY keeps the files' modification times, which can be older than the placeholder build:
# touch the crate roots so that cargo rebuilds lockd itself.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked -p lockd \
    && cp target/release/lockd /usr/local/bin/lockd

# --- run ---------------------------------------------------------------------------------
FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 lockd \
    && useradd --system --uid 10001 --gid lockd --no-create-home --shell /usr/sbin/nologin lockd
COPY --from=build /usr/local/bin/lockd /usr/local/bin/lockd

# The Redis that holds the locks; override at run time.
# ENV LOCKD_REDIS__URL=redis://redis:6379
USER lockd:lockd
EXPOSE 8080
ENTRYPOINT ["lockd"]
