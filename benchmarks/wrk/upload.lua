-- Send a body of BYTES bytes on every request, with METHOD (POST unless given; PUT for
-- a WebDAV upload to a file). With "each", every request goes to a path of its own
-- (PATH.THREAD.N), so a WebDAV server keeps every body, as a sink appending them does,
-- instead of replacing one file.
--   wrk -s upload.lua URL -- BYTES [METHOD [each]]
dofile(debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "report.lua")

local threads = 0

function setup(thread)
   threads = threads + 1
   thread:set("thread_id", threads)
end

function init(args)
   wrk.method = args[2] or "POST"
   wrk.headers["Content-Type"] = "application/octet-stream"
   wrk.body = string.rep("r", tonumber(args[1]))
   each = args[3] == "each"
   sent = 0
end

function request()
   if not each then
      return wrk.request()
   end
   sent = sent + 1
   return wrk.format(nil, string.format("%s.%d.%d", wrk.path, thread_id, sent))
end
