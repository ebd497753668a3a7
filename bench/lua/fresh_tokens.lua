-- Configuration (e): every request carries a different pre-minted token.
--   wrk ... -s fresh_tokens.lua <url> -- <tokens file> <first index> <path>
-- The tokens file has one JWT per line. Requests take the tokens in file order starting at
-- <first index> (0-based), so a warm-up run and the measured run that follows it on the same
-- Envoy use disjoint tokens. Use one wrk thread (-t1): a second thread would walk the same
-- list. If the list runs out it wraps around, and the runner reports the run as invalid
-- (issued + first > tokens): the relay's cache would then see tokens again.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

tokens = {}
ntokens = 0
issued = 0
local first = 0
local path = "/api/me"

function init(args)
  local file = args[1]
  if file == nil then
    error("fresh_tokens.lua: pass the tokens file after --")
  end
  first = tonumber(args[2] or "0")
  path = args[3] or path
  for line in io.lines(file) do
    if #line > 0 then
      ntokens = ntokens + 1
      tokens[ntokens] = "__Host-relay-at=" .. line
    end
  end
  if ntokens == 0 then
    error("fresh_tokens.lua: no tokens in " .. file)
  end
end

function request()
  local i = (first + issued) % ntokens
  issued = issued + 1
  return wrk.format("GET", path, { ["Cookie"] = tokens[i + 1] })
end
