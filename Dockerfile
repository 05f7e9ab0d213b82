# One image holds every canotify binary; compose picks one per service with
# `command`.
FROM rust:1.88-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --workspace

FROM debian:bookworm-slim
RUN useradd --system --no-create-home canotify
COPY --from=build /src/target/release/canotify \
                  /src/target/release/canotify-producer \
                  /src/target/release/canotify-worker \
                  /src/target/release/canotify-writer \
                  /src/target/release/canotify-simulators \
                  /usr/local/bin/
USER canotify
CMD ["canotify", "--help"]
