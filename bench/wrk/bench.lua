-- wrk script for every scenario: prints one machine-readable result line from done(), and, when
-- BENCH_UPLOAD_FILE is set, turns each request into a multipart POST of that JPEG.
--
-- Each upload carries a JPEG comment segment (FF FE) with a counter right after the SOI marker, so every
-- request's bytes differ: the service stores content-addressed blobs and answers a repeated upload from
-- its existing record, which would measure a lookup rather than an upload.

local upload_file = os.getenv("BENCH_UPLOAD_FILE")
local model_id = os.getenv("BENCH_MODEL_ID") or "bench-upload"
local nonce = os.getenv("BENCH_NONCE") or tostring(os.time())
local boundary = "----imageservice-bench-9c2f4e1b"
local thread_count = 0

function setup(thread)
   thread_count = thread_count + 1
   thread:set("thread_id", thread_count)
end

if upload_file then
   local jpeg, head, prefix, suffix, headers
   local counter = 0

   function init(args)
      local f = assert(io.open(upload_file, "rb"))
      jpeg = f:read("*a")
      f:close()
      assert(jpeg:sub(1, 2) == "\255\216", "not a JPEG: " .. upload_file)
      head = jpeg:sub(1, 2)
      jpeg = jpeg:sub(3)
      prefix = "--" .. boundary .. "\r\n"
         .. 'Content-Disposition: form-data; name="model_id"\r\n\r\n' .. model_id .. "\r\n"
         .. "--" .. boundary .. "\r\n"
         .. 'Content-Disposition: form-data; name="file"; filename="bench.jpg"\r\n'
         .. "Content-Type: image/jpeg\r\n\r\n"
      suffix = "\r\n--" .. boundary .. "--\r\n"
      -- wrk.format() drops wrk.headers (the -H options) when given a table: copy them in.
      headers = {}
      for name, value in pairs(wrk.headers) do
         headers[name] = value
      end
      headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary
   end

   function request()
      counter = counter + 1
      local tag = string.format("bench %s %d %d", nonce, thread_id or 0, counter)
      local length = #tag + 2
      local comment = "\255\254" .. string.char(math.floor(length / 256), length % 256) .. tag
      local body = prefix .. head .. comment .. jpeg .. suffix
      return wrk.format("POST", nil, headers, body)
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   local function ms(q)
      return latency:percentile(q) / 1000
   end
   io.write(string.format(
      'BENCH_RESULT {"requests": %d, "bytes": %d, "duration_us": %d, "connect_errors": %d, '
         .. '"read_errors": %d, "write_errors": %d, "status_errors": %d, "timeouts": %d, '
         .. '"p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f, "mean_ms": %.3f}\n',
      summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write, e.status,
      e.timeout, ms(50), ms(90), ms(99), latency.max / 1000, latency.mean / 1000
   ))
end
