-- wrk script for bench/serve.sh: POST /_matrix/key/v2/query (a notary
-- query) with the JSON body in $BENCH_BODY.
--
-- BENCH_XFF_POOL=N (N > 0) adds an X-Forwarded-For header that cycles over
-- N addresses in 10.0.0.0/8, one per request, each wrk thread on its own
-- offset. homeport's notary limits every client address to 600 requests a
-- minute; a listener with `x_forwarded: true` (trusted from 127.0.0.0/8 by
-- default) then sees N clients instead of one, so the run measures the
-- cache-hit path and not the rate limiter. Keep N under 10000 (above that
-- homeport sweeps its bucket map on every request) and large enough that no
-- address goes over 600 a minute: N > requests/s * duration_s / 600.
-- Without BENCH_XFF_POOL the request is static (wrk builds it once).

local body = os.getenv("BENCH_BODY")
if body == nil or body == "" then
  error("bench/notary.lua: set BENCH_BODY to the query JSON")
end
local pool = tonumber(os.getenv("BENCH_XFF_POOL") or "0") or 0

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"

local threads = 0
function setup(thread)
  thread:set("thread_id", threads)
  threads = threads + 1
end

if pool > 0 then
  local n = 0
  function request()
    n = n + 1
    local i = ((thread_id or 0) * 104729 + n) % pool
    wrk.headers["X-Forwarded-For"] = string.format("10.%d.%d.%d",
      math.floor(i / 65536) % 256, math.floor(i / 256) % 256, i % 256)
    return wrk.format()
  end
end
