-- GET with one bearer token on every request: what a verified-token cache is for.
--   wrk -s token.lua URL -- TOKEN_FILE     (the first line of the file is the token)
dofile(debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "report.lua")

function init(args)
   local file = assert(io.open(args[1], "r"))
   local token = file:read("*l")
   file:close()
   -- set before wrk builds its one request, so the request stays static (no Lua per request)
   wrk.headers["Authorization"] = "Bearer " .. token
end
