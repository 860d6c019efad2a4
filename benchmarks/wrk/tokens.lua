-- GET with a different bearer token on each request, round-robin through every line
-- of TOKEN_FILE: each token is verified afresh unless it was seen before.
--   wrk -t THREADS -s tokens.lua URL -- TOKEN_FILE THREADS
dofile(debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "report.lua")

local next_id = 0
function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
end

local requests, count, position

function init(args)
   -- every request is formatted here, before the clock starts, so the run itself
   -- only hands out prepared strings
   requests = {}
   for token in io.lines(args[1]) do
      wrk.headers["Authorization"] = "Bearer " .. token
      requests[#requests + 1] = wrk.format()
   end
   count = #requests
   -- each thread starts in its own share of the list, so no two threads send the
   -- same token close together
   position = math.floor(id * count / tonumber(args[2]))
end

function request()
   position = position % count + 1
   return requests[position]
end
