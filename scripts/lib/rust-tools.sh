# Sourced by scripts/test: the Rust tools the feature and MSRV checks need, installed when
# missing. cargo-hack goes into .tools/cargo (git-ignored); the MSRV toolchain comes from
# rustup. Each function says what it did, or why it could not.

a4co_cargo_hack_version=0.6.46

# Puts a cargo-hack on PATH: the one already there, else .tools/cargo/bin, else installs it.
a4co_ensure_cargo_hack() {
  local root tools
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  tools="$root/.tools/cargo"
  export PATH="$tools/bin:$PATH"
  if cargo hack --version >/dev/null 2>&1; then
    return 0
  fi
  echo "cargo-hack not found: installing cargo-hack $a4co_cargo_hack_version into .tools/cargo (about a minute)" >&2
  cargo install --quiet --locked --root "$tools" "cargo-hack@$a4co_cargo_hack_version" >&2 \
    && cargo hack --version >/dev/null 2>&1
}

# The workspace's declared rust-version, read from Cargo.toml.
a4co_msrv() {
  sed -n 's/^rust-version = "\([0-9.]*\)".*/\1/p' Cargo.toml | head -n 1
}

# Makes the MSRV toolchain available through rustup; fails when rustup cannot install it.
a4co_ensure_msrv_toolchain() {
  local msrv=$1
  command -v rustup >/dev/null 2>&1 || { echo "rustup is not installed" >&2; return 1; }
  rustup run "$msrv" rustc --version >/dev/null 2>&1 && return 0
  echo "installing Rust $msrv with rustup (minimal profile)" >&2
  rustup toolchain install "$msrv" --profile minimal --no-self-update >&2 \
    && rustup run "$msrv" rustc --version >/dev/null 2>&1
}
