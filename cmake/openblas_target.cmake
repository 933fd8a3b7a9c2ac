# lstm_ext_openblas_target(): the imported target OpenBLAS::OpenBLAS from the
# OpenBLAS package that find_package(OpenBLAS CONFIG) found (OpenBLAS_DIR).
# Used by the build (CMakeLists.txt) and by the installed lstm_extConfig.cmake.
#
# Only the scipy-openblas32 wheels from 0.3.34 define the target. OpenBLAS's
# own `make install`, Debian's libopenblas-dev and the older wheels set only
# OpenBLAS_LIBRARIES and OpenBLAS_INCLUDE_DIRS, and the wheels before 0.3.29
# set them to /usr/local paths where the wheel has no files: a wheel keeps them
# in <root>/lib and <root>/include, its config in <root>/lib/cmake/openblas.
function(lstm_ext_openblas_target)
  if(TARGET OpenBLAS::OpenBLAS)
    return()
  endif()
  set(_libs ${OpenBLAS_LIBRARIES})
  set(_inc ${OpenBLAS_INCLUDE_DIRS})
  if(NOT _libs)
    message(FATAL_ERROR "lstm_ext: the OpenBLAS package in '${OpenBLAS_DIR}' defines neither "
                        "the target OpenBLAS::OpenBLAS nor OpenBLAS_LIBRARIES")
  endif()
  list(GET _libs 0 _lib)
  list(REMOVE_AT _libs 0)
  get_filename_component(_root "${OpenBLAS_DIR}/../../.." ABSOLUTE)
  get_filename_component(_name "${_lib}" NAME)
  if(NOT EXISTS "${_lib}" AND EXISTS "${_root}/lib/${_name}")
    set(_lib "${_root}/lib/${_name}")
    set(_inc "${_root}/include")
  endif()
  if(NOT EXISTS "${_lib}")
    message(FATAL_ERROR "lstm_ext: the OpenBLAS package in '${OpenBLAS_DIR}' names the library "
                        "'${_lib}', which does not exist")
  endif()
  add_library(OpenBLAS::OpenBLAS UNKNOWN IMPORTED)
  set_target_properties(OpenBLAS::OpenBLAS PROPERTIES IMPORTED_LOCATION "${_lib}"
                        INTERFACE_INCLUDE_DIRECTORIES "${_inc}" INTERFACE_LINK_LIBRARIES "${_libs}")
endfunction()

# lstm_ext_openblas_prefix(<var>): "scipy_" where the OpenBLAS package found is
# a scipy-openblas wheel's (its folder or its library's name says so), whose
# symbols carry that prefix; else "". Read before or after
# lstm_ext_openblas_target().
function(lstm_ext_openblas_prefix out)
  set(_file "${OpenBLAS_LIBRARIES}")
  if(TARGET OpenBLAS::OpenBLAS)
    get_target_property(_file OpenBLAS::OpenBLAS LOCATION)
  endif()
  if(OpenBLAS_DIR MATCHES "scipy_openblas" OR _file MATCHES "libscipy_openblas")
    set(${out} "scipy_" PARENT_SCOPE)
  else()
    set(${out} "" PARENT_SCOPE)
  endif()
endfunction()
