-- GET without credentials.
--   wrk -s plain.lua URL
dofile(debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "report.lua")
