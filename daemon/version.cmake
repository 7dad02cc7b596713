# Writes OUT (tetherd_version.h): TETHERD_VERSION (the project's) and
# TETHERD_GIT_REVISION (git describe of SOURCE_DIR; "unknown" outside a git
# tree, e.g. a release tarball). Run at every build by the tetherd_version
# target; rewrites OUT only when its text changes.
execute_process(
  COMMAND git -C ${SOURCE_DIR} describe --always --dirty --abbrev=12
  OUTPUT_VARIABLE rev OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE rc)
if(NOT rc EQUAL 0 OR rev STREQUAL "")
  set(rev "unknown")
endif()
set(text "#define TETHERD_VERSION \"${VERSION}\"\n#define TETHERD_GIT_REVISION \"${rev}\"\n")
if(EXISTS ${OUT})
  file(READ ${OUT} old)
endif()
if(NOT "${old}" STREQUAL "${text}")
  file(WRITE ${OUT} "${text}")
endif()
