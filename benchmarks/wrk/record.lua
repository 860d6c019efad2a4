-- POST one NDJSON record of about BYTES bytes per request.
--   wrk -s record.lua URL -- BYTES [METHOD]
dofile(debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "report.lua")

function init(args)
   wrk.method = args[2] or "POST"
   wrk.headers["Content-Type"] = "application/x-ndjson"
   local size = tonumber(args[1])
   wrk.body = '{"id":1,"pad":"' .. string.rep("x", size - 20) .. '"}\n'
end
