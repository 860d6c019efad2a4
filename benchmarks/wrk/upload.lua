-- Send a body of BYTES bytes on every request, with METHOD (POST unless given; PUT for
-- a WebDAV upload to a file).
--   wrk -s upload.lua URL -- BYTES [METHOD]
dofile(debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "report.lua")

function init(args)
   wrk.method = args[2] or "POST"
   wrk.headers["Content-Type"] = "application/octet-stream"
   wrk.body = string.rep("r", tonumber(args[1]))
end
