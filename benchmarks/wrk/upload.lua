-- POST a body of BYTES bytes on every request.
--   wrk -s upload.lua URL -- BYTES
dofile(debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "report.lua")

function init(args)
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/octet-stream"
   wrk.body = string.rep("r", tonumber(args[1]))
end
