# Sourced by scripts/test: fetches the official AsyncAPI 3.0.0 JSON Schema (npm package
# @asyncapi/specs) into .tools/ and exports A4CO_ASYNCAPI_SCHEMA, so a test can check the
# generated asyncapi.yaml against the specification itself.

a4co_asyncapi_specs_version=6.11.1

a4co_ensure_asyncapi_schema() {
  local root dir file
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  dir="$root/.tools/asyncapi-specs-$a4co_asyncapi_specs_version"
  file="$dir/package/schemas/3.0.0-without-\$id.json"
  if [ ! -f "$file" ]; then
    echo "fetching @asyncapi/specs@$a4co_asyncapi_specs_version (the AsyncAPI 3.0 schema) into .tools/" >&2
    mkdir -p "$dir"
    if ! (cd "$dir" && npm pack --silent "@asyncapi/specs@$a4co_asyncapi_specs_version" >/dev/null 2>&1 \
          && tar xzf asyncapi-specs-*.tgz); then
      echo "could not fetch @asyncapi/specs with npm: the AsyncAPI test will fail and say so." >&2
      return 1
    fi
  fi
  export A4CO_ASYNCAPI_SCHEMA="$file"
}
