-- PUT a body of BYTES bytes on every request (WebDAV upload to a file).
--   wrk -s put.lua URL -- BYTES
dofile(debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "report.lua")

function init(args)
   wrk.method = "PUT"
   wrk.headers["Content-Type"] = "application/octet-stream"
   wrk.body = string.rep("r", tonumber(args[1]))
end
