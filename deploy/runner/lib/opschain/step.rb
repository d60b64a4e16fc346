# frozen_string_literal: true

require 'base64'
require 'fileutils'
require 'json'
require 'logger'
require 'set'

module OpsChain
  STRATEGIES = %i[sequential parallel].freeze

  # The child steps of the running step: a Set of action names (strings; symbols are accepted).
  class ChildSteps < Set
    def add(action) = super(action.to_s)
    alias << add
    def include?(action) = super(action.to_s)
    alias member? include?
    def delete(action) = super(action.to_s)
  end

  # OpsChain.project / .environment / .asset of the older API: .properties is that owner's writable properties;
  # other readers (code, name, id…) come from context.parents.<owner>.
  class OwnerView
    def initialize(owner) = @owner = owner
    def properties = OpsChain.properties_for(@owner)

    def method_missing(name, *args, &block)
      parent = OpsChain.context.parents&.[](@owner)
      return parent.public_send(name, *args, &block) if parent

      super
    end

    def respond_to_missing?(name, include_private = false) = !OpsChain.context.parents&.[](@owner).nil? || super
  end

  class << self
    # --- the step context --------------------------------------------------------------------------------------

    # The step context file in use: set by opschain-exec --context, else the first found in the repo folders.
    attr_writer :context_file

    def context_file = @context_file || Paths.context_file

    # The whole (normalised) step context; {} parts when none is mounted: the commands still run.
    def document
      @document ||= context_file ? StepContextFile.read(context_file) : StepContextFile.normalise({})
    end

    # The actions the running step was asked for: fill context.change.action / step.action when they are blank.
    attr_reader :requested_actions

    def requested_actions=(actions)
      @requested_actions = actions
      @context = nil
    end

    # OpsChain.context: change, step, user, parents, parent_order… read only, dot/symbol/string access.
    def context
      @context ||= begin
        values = Marshal.load(Marshal.dump(document['context']))
        unless Array(requested_actions).empty?
          action = requested_actions.join(' ')
          %w[change step].each do |key|
            values[key] = {} unless values[key].is_a?(Hash)
            values[key]['action'] = action if values[key]['action'].to_s.empty?
          end
        end
        ReadOnlyProperties.build(values, 'OpsChain.context')
      end
    end

    # --- properties ------------------------------------------------------------------------------------------

    # Owners in merge order, lowest precedence first: parent_order, then owners it does not list.
    def owners
      listed = Array(document['context']['parent_order']).map(&:to_s)
      (document['properties'].keys - listed) + listed
    end

    # The merged properties (repository, then each owner): read only, regenerated on every call.
    def properties
      merged = owners.reduce(repository_properties_values) { |all, owner| OpsChain.deep_merge(all, Properties.plain(working[owner])) }
      ReadOnlyProperties.build(merged, 'OpsChain.properties')
    end

    # One owner's properties, writable with dot, symbol or string access; changes become its properties_diffs.
    def properties_for(owner)
      owner = owner.to_s
      return repository_properties if owner == 'repository'
      unless owners.include?(owner)
        raise ArgumentError, "this step has no #{owner} properties (its owners: #{(['repository'] + owners).join(', ')})"
      end

      working[owner]
    end

    # Older API: replace an owner's properties wholesale.
    def set_properties_for(owner, values)
      properties_for(owner)
      working[owner.to_s] = Properties.new(Properties.plain(values))
    end

    # Repository properties (<repo folder>/properties.json), read only.
    def repository_properties = ReadOnlyProperties.build(repository_properties_values, 'OpsChain.repository_properties')

    # One parent's own repository properties (files in properties/projects/<code>/ for :project…), read only.
    def repository_properties_for(owner)
      ReadOnlyProperties.build(RepositoryProperties.for_owner(owner), "OpsChain.repository_properties_for(:#{owner})")
    end

    def project = OwnerView.new('project')
    def environment = OwnerView.new('environment')
    def asset = OwnerView.new('asset')

    # Env var properties (opschain.env), merged: repository first, later owners win; values as strings.
    def env
      layers.each_with_object({}) do |values, merged|
        vars = values.dig('opschain', 'env')
        next unless vars.is_a?(Hash)

        vars.each { |name, value| merged[name.to_s] = value.is_a?(String) ? value : JSON.generate(value) }
      end
    end

    # File properties (opschain.files), merged like the rest: { "path" => { "content", "mode", "format" } }.
    def file_properties
      layers.each_with_object({}) do |values, merged|
        files = values.dig('opschain', 'files')
        files.each { |path, spec| merged[path] = spec } if files.is_a?(Hash)
      end
    end

    # Writes every file property (before the action runs). Paths are expanded (~ is the runner's home).
    def write_files!
      file_properties.each do |path, spec|
        spec = {} unless spec.is_a?(Hash)
        target = File.expand_path(path)
        FileUtils.mkdir_p(File.dirname(target))
        File.binwrite(target, decode_file(spec['content'], spec['format'], path))
        File.chmod(Integer(spec['mode'].to_s, 8), target) unless spec['mode'].nil? || spec['mode'].to_s.empty?
      end
    end

    # Stores a file in an owner's file properties (opschain.files), to be written before later steps' actions.
    def store_file!(owner, path, format: :raw)
      target = File.expand_path(path)
      content = File.binread(target)
      value = case format.to_s
              when 'base64' then Base64.strict_encode64(content)
              when 'json' then JSON.parse(content)
              when 'raw', '' then utf8(content, target)
              else raise ArgumentError, "unknown file format #{format.inspect} (raw, base64 or json)"
              end
      entry = { 'content' => value }
      entry['format'] = format.to_s unless format.to_s == 'raw'
      owner_files(owner)[target] = entry
    end

    def remove_file!(owner, path)
      owner_files(owner).delete(File.expand_path(path))
    end

    # --- child steps -----------------------------------------------------------------------------------------

    # OpsChain.child_steps: the Set of child step actions (reading never changes it). The older form with
    # arguments, child_steps('a', 'b', strategy: :parallel), replaces them and sets the strategy.
    def child_steps(*actions, strategy: nil)
      @child_steps ||= ChildSteps.new
      return @child_steps if actions.empty? && strategy.nil?

      self.child_steps = actions unless actions.empty?
      self.child_execution_strategy = strategy if strategy
      @child_steps
    end

    def child_steps=(actions)
      @child_steps = ChildSteps.new(Dsl.step_names(actions))
    end

    alias replace_child_steps child_steps=

    def append_child_steps(*actions)
      Dsl.step_names(actions).each { |action| child_steps.add(action) }
      child_steps
    end

    def child_execution_strategy = @child_execution_strategy || :sequential

    def child_execution_strategy=(strategy)
      raise ArgumentError, "child_execution_strategy must be :sequential or :parallel, not #{strategy.inspect}" unless STRATEGIES.include?(strategy.to_s.to_sym)

      @child_execution_strategy = strategy.to_s.to_sym
    end

    # --- logging ---------------------------------------------------------------------------------------------

    def logger
      @logger ||= Logger.new($stdout, progname: 'opschain').tap do |logger|
        logger.level = Logger::INFO
        logger.formatter = proc { |severity, _time, _prog, message| "#{severity == 'INFO' ? '' : "#{severity}: "}#{message}\n" }
      end
    end

    attr_writer :logger

    # --- the result ------------------------------------------------------------------------------------------

    # step_result.json's content (compatibility.md's shape).
    def result
      diffs = owners.to_h { |owner| [owner, JsonDiff.diff(original[owner], Properties.plain(working[owner]))] }.reject { |_, ops| ops.empty? }
      {
        'step' => { 'properties' => Properties.plain(properties) },
        'properties_diffs' => diffs,
        'child_step_definitions' => {
          'children' => child_steps.map { |action| Dsl.child_definition(action) },
          'child_execution_strategy' => child_execution_strategy.to_s
        },
        'expected_step_tree' => expected_step_tree
      }
    end

    # Written next to the step context (the configured repo folder when none is mounted).
    def result_path
      dir = context_file && File.basename(context_file).start_with?('step_context.json') ? File.dirname(context_file) : File.join(Paths.repo_dir, Paths.configured_folder || Paths.repo_folder)
      File.join(dir, 'step_result.json')
    end

    # A dry run's step tree (Dsl.expected_tree); nil otherwise, as in the docs' sample.
    attr_accessor :expected_step_tree

    def write_result
      path = result_path
      temporary = "#{path}.tmp"
      File.write(temporary, JSON.generate(result))
      File.rename(temporary, path)
    end

    # Forgets everything read or changed (tests, and a fresh step).
    def reset!
      @document = @context = @original = @working = @repository = @child_steps = @child_execution_strategy = nil
      @context_file = @requested_actions = @expected_step_tree = nil
    end

    private

    def layers = [repository_properties_values, *owners.map { |owner| Properties.plain(working[owner]) }]

    def repository_properties_values = (@repository ||= RepositoryProperties.load)

    def original
      @original ||= owners.to_h { |owner| [owner, document['properties'][owner].is_a?(Hash) ? document['properties'][owner] : {}] }
    end

    def working
      @working ||= owners.to_h { |owner| [owner, Properties.new(Marshal.load(Marshal.dump(original[owner])))] }
    end

    def owner_files(owner)
      values = properties_for(owner)
      raise ArgumentError, 'repository properties are read only' if values.is_a?(ReadOnlyProperties)

      values['opschain'] = {} unless values['opschain'].is_a?(Hash)
      values['opschain']['files'] = {} unless values['opschain']['files'].is_a?(Hash)
      values['opschain']['files']
    end

    def decode_file(content, format, path)
      case format.to_s
      when 'base64' then Base64.decode64(content.to_s)
      when 'json' then JSON.pretty_generate(content)
      when 'raw', '' then content.is_a?(String) || content.nil? ? content.to_s : JSON.generate(content)
      else raise ArgumentError, "file property #{path}: unknown format #{format.inspect} (raw, base64 or json)"
      end
    end

    def utf8(content, path)
      text = content.dup.force_encoding(Encoding::UTF_8)
      raise ArgumentError, "#{path} is not UTF-8 text: store it with format: :base64" unless text.valid_encoding?

      text
    end
  end
end
