-- wrk script for loadtest/bench.sh: POST /v1/heartbeat (BATCH=1) or
-- /v1/heartbeats with BATCH heartbeats a request, each user distinct until
-- USERS (default 100000) have been sent, then round again. The requests
-- are built once in init, so wrk's cost per request is what it is for a
-- static request.
local batch = tonumber(os.getenv("BATCH") or "1")
local users = tonumber(os.getenv("USERS") or "100000")
local reqs = {}
local n = 0

function init(args)
  local path = "/v1/heartbeat"
  if batch > 1 then path = "/v1/heartbeats" end
  local headers = { ["Content-Type"] = "application/json" }
  local k = 0
  for i = 1, math.max(1, math.floor(users / batch)) do
    local items = {}
    for j = 1, batch do
      k = k + 1
      items[j] = string.format('{"user":"wrk-%d","room":"room-%d"}', k, k % 1000)
    end
    local body = items[1]
    if batch > 1 then body = '{"heartbeats":[' .. table.concat(items, ",") .. ']}' end
    reqs[i] = wrk.format("POST", path, headers, body)
  end
end

function request()
  n = n % #reqs + 1
  return reqs[n]
end
