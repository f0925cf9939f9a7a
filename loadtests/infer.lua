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

-- Count answers that are not 200: a benchmark of errors is no benchmark.
done = function(summary, latency, requests)
  io.stderr:write(string.format("non2xx=%d\n", summary.errors.status))
end
