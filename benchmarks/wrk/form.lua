-- POST one form body on every request, optionally with a bearer token (relay's token endpoints).
--   wrk -s form.lua URL -- BODY_FILE [TOKEN_FILE]     (first line of each file)
dofile(debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "report.lua")

local function first_line(path)
   local file = assert(io.open(path, "r"))
   local line = file:read("*l")
   file:close()
   return line
end

function init(args)
   wrk.method = "POST"
   wrk.body = first_line(args[1])
   wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
   if args[2] then
      wrk.headers["Authorization"] = "Bearer " .. first_line(args[2])
   end
end
