# The CUDA path: the static library lstm_ext_cuda (alias lstm_ext::cuda), built
# when LSTM_EXT_CUDA is ON, or AUTO and both nvcc and cuBLAS are found. cuBLAS
# comes from the CUDA toolkit, else from LSTM_EXT_CUBLAS_ROOT, else from the
# nvidia-cublas wheel of the Python that builds (nvidia/cu13). Sets
# LSTM_EXT_CUBLAS_LIBDIR for the module's RPATH.
set(_lstm_ext_cuda_missing "")
if(LSTM_EXT_CUDA STREQUAL "OFF")
  set(_lstm_ext_cuda_missing "LSTM_EXT_CUDA=OFF")
else()
  include(CheckLanguage)
  check_language(CUDA)
  if(NOT CMAKE_CUDA_COMPILER)
    set(_lstm_ext_cuda_missing "no CUDA compiler (nvcc) found")
  endif()
endif()

if(NOT _lstm_ext_cuda_missing)
  find_package(CUDAToolkit QUIET)
  set(_cublas_hints "")
  if(LSTM_EXT_CUBLAS_ROOT)
    list(APPEND _cublas_hints "${LSTM_EXT_CUBLAS_ROOT}")
  endif()
  if(Python_Interpreter_FOUND)
    execute_process(
      COMMAND "${Python_EXECUTABLE}" -c "import nvidia.cu13 as m; print(list(m.__path__)[0])"
      OUTPUT_VARIABLE _wheel OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _rc ERROR_QUIET)
    if(_rc EQUAL 0)
      list(APPEND _cublas_hints "${_wheel}")
    endif()
  endif()
  if(CUDAToolkit_FOUND)
    list(APPEND _cublas_hints "${CUDAToolkit_LIBRARY_ROOT}" "${CUDAToolkit_TARGET_DIR}")
  endif()
  set(_inc_hints "")
  set(_lib_hints "")
  foreach(h IN LISTS _cublas_hints)
    list(APPEND _inc_hints "${h}/include")
    list(APPEND _lib_hints "${h}/lib" "${h}/lib64")
  endforeach()
  if(CUDAToolkit_FOUND)
    list(APPEND _inc_hints ${CUDAToolkit_INCLUDE_DIRS})
    list(APPEND _lib_hints "${CUDAToolkit_LIBRARY_DIR}")
  endif()
  find_path(LSTM_EXT_CUBLAS_INCLUDE cublas_v2.h HINTS ${_inc_hints})
  find_library(LSTM_EXT_CUBLAS_LIBRARY NAMES cublas libcublas.so.13 libcublas.so.12 HINTS ${_lib_hints})
  find_library(LSTM_EXT_CUBLASLT_LIBRARY NAMES cublasLt libcublasLt.so.13 libcublasLt.so.12
               HINTS ${_lib_hints})
  if(NOT LSTM_EXT_CUBLAS_INCLUDE OR NOT LSTM_EXT_CUBLAS_LIBRARY OR NOT LSTM_EXT_CUBLASLT_LIBRARY)
    set(_lstm_ext_cuda_missing
        "cuBLAS not found (set LSTM_EXT_CUBLAS_ROOT, or install the nvidia-cublas wheel)")
  endif()
endif()

if(_lstm_ext_cuda_missing)
  if(LSTM_EXT_CUDA STREQUAL "ON")
    message(FATAL_ERROR "lstm_ext: LSTM_EXT_CUDA=ON, but ${_lstm_ext_cuda_missing}")
  endif()
  message(STATUS "lstm_ext: CUDA path not built: ${_lstm_ext_cuda_missing}")
  return()
endif()

enable_language(CUDA)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
get_filename_component(LSTM_EXT_CUBLAS_LIBDIR "${LSTM_EXT_CUBLAS_LIBRARY}" DIRECTORY)
message(STATUS "lstm_ext: CUDA path built with ${CMAKE_CUDA_COMPILER} "
               "(${CMAKE_CUDA_COMPILER_VERSION}) for ${LSTM_EXT_CUDA_ARCHITECTURES}; "
               "cuBLAS ${LSTM_EXT_CUBLAS_LIBRARY}")

add_library(lstm_ext_cuda STATIC cuda/src/lstm_cuda.cu cuda/src/runtime.cu)
add_library(lstm_ext::cuda ALIAS lstm_ext_cuda)
set_target_properties(lstm_ext_cuda PROPERTIES
  CUDA_ARCHITECTURES "${LSTM_EXT_CUDA_ARCHITECTURES}"
  CUDA_RUNTIME_LIBRARY Static
  POSITION_INDEPENDENT_CODE ON)
target_include_directories(lstm_ext_cuda
  PUBLIC $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/cpp/include>
         $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/cuda/include>
  PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/cpp/src ${LSTM_EXT_CUBLAS_INCLUDE})
# cuBLAS's shared libraries; libcublasLt is cuBLAS's own dependency.
target_link_libraries(lstm_ext_cuda PUBLIC "${LSTM_EXT_CUBLAS_LIBRARY}" "${LSTM_EXT_CUBLASLT_LIBRARY}")
target_link_options(lstm_ext_cuda PUBLIC "LINKER:-rpath-link,${LSTM_EXT_CUBLAS_LIBDIR}")
target_compile_options(lstm_ext_cuda PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall>)
