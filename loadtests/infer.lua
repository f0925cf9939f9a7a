-- wrk script: POST one V2 inference request, body from the BODY_FILE environment variable.
-- With HEADER_LENGTH set, the body is binary (JSON header + raw tensors): the header
-- Inference-Header-Content-Length says where the JSON ends, as tritonclient sends it.
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
local header_length = os.getenv("HEADER_LENGTH")
if header_length then
  wrk.headers["Content-Type"] = "application/octet-stream"
  wrk.headers["Inference-Header-Content-Length"] = header_length
else
  wrk.headers["Content-Type"] = "application/json"
end

-- With DELAY_MS set, each connection waits that long between requests: a paced load
-- (connections x 1000 / DELAY_MS requests a second at most) for the soak.
local delay_ms = tonumber(os.getenv("DELAY_MS") or "")
if delay_ms then
  delay = function() return delay_ms end
end

-- Count answers that are not 200 and socket errors: a benchmark of errors is no benchmark.
done = function(summary, latency, requests)
  local e = summary.errors
  io.stderr:write(string.format("non2xx=%d\n", e.status))
  io.stderr:write(string.format("socket_errors=%d\n", e.connect + e.read + e.write + e.timeout))
end
